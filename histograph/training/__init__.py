"""Lightning training: the LightningModule, metrics, callbacks and loggers."""
