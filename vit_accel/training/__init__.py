"""The pieces of `train.py`: arguments, model setup, optimizer, checkpoints and reporting."""
