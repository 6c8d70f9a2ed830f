"""Trainer entrypoints: thin ``main(cfg)`` functions around TRL's GRPOTrainer and SFTTrainer."""
