"""Headers our server's answers carry beyond the protocol's, for clients that measure it (the load tests).

Plain constants with no imports, so a load-test client reads them without pulling in torch or the handler.
"""

BATCH_HEADER = "X-Convserve-Batch-Size"  # how many requests the answer's dynamic batch held
WORKER_HEADER = "X-Convserve-Worker"  # which of the v2 server's worker processes answered (its index)
