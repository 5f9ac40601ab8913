import os
import sys

# Tests import the top-level algorithm files and common/ from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
