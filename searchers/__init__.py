"""Ray Tune searchers that schedule fusion-mask search strategies (SFSA, beam, exhaustive)."""
