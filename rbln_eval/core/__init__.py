"""What every model family builds on: the scheduler of device programs, replica shapes, work items and the executor protocol, device counters, and the lm_eval model over an executor."""
