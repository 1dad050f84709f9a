"""Source text of small variants that tests write out as files of outside variants.

The plain attention body of README's example (repeat the key/value heads, mask, softmax), here
once: the tests that load a variant from outside the repository build theirs on it.
"""

CORRECT_RUN = '''
import torch
from attnsuite import mask_mods


def correct_run(problem):
    allowed = mask_mods.dense_bool_mask(problem)

    def run(q, k, v):
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        s = q @ k.transpose(-1, -2) * problem.softmax_scale
        if allowed is not None:
            s = s.masked_fill(~allowed, float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    return run
'''
