"""The search, apart from Ray: strategies over fusion masks, the trial record, the experiment's files.

Nothing here imports torch, MONAI or Ray (an import contract checks it), so the Ray-side
searchers and the CLI load it in milliseconds.
"""
