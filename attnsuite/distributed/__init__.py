"""Variants that run on P ranks of a process group, checked and timed on every rank (docs/distributed.md).

``variant`` (the variant kind), ``shard`` (contiguous and zigzag layouts), ``launch``/``worker``
(start the ranks, with deadlines), ``run`` (one call on the ranks, gathered), ``check`` (the suite's
checks over the gathered result), ``ring_attention`` and ``all_to_all`` (the algorithms),
``bench``/``scaling`` (timing on the ranks).
"""
