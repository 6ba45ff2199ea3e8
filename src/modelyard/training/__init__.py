"""Training: the shared loop (``loop``), the losses (``losses``), run orchestration (``run``), pretraining."""
