"""Ray Tune function trainables that train one fusion-mask candidate."""
