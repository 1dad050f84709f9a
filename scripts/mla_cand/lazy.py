import sys, os
sys.path.insert(0, os.path.dirname(__file__))
from kern import make
launch, mla_forward = make(True, 1)
