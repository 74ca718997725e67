import os
import sys

# tests import `fixtures` as a plain module
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("WANDB_MODE", "offline")
