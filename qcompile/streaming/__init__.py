"""Streaming weight-only quantisation: one weight (RTN) or one block of the graph (GPTQ/AWQ) in memory at a time.

``store`` holds the model's tensors outside its proto (the proto becomes a small skeleton), ``plan`` decides which
nodes get which bits, ``segments``/``capture`` run the graph block by block for the algorithms that need input
statistics, ``emit`` writes the quantised nodes, ``sink`` writes their tensors (to an external data file as they
come, or inline) and ``engine`` puts these together.
"""
