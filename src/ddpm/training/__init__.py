"""Lightning glue: the LightningModule (hooks only), callbacks, exact resume, optimizer, loggers, preemption."""
