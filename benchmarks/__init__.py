"""aigc's performance benchmarks (`make bench`, `python -m benchmarks`): side-by-side ratios and scale runs.

Each figure is a ratio of two things measured in the same process, interleaved, so
it holds on a noisy machine. See benchmarks/README.md.
"""
