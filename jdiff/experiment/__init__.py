"""jdiff.experiment: what a workdir holds, shared by training and by using a trained model: the config's
checks (``config``), the model a config describes (``builder``), the train state and optimizer
(``state``) and orbax checkpoints with checksums (``checkpoint``)."""
