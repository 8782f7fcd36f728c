"""Default grids and settings of the probes (plain Python, so the CLI can show them without heavy imports)."""

#: 13 log-spaced learning rates, 1e-4 .. 1 (three per decade), for the linear grid.
DEFAULT_LRS = (0.0001, 0.000215, 0.000464, 0.001, 0.00215, 0.00464, 0.01, 0.0215, 0.0464, 0.1, 0.215, 0.464, 1.0)
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4)
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 256
#: 13 log-spaced inverse regularisation strengths, 1e-6 .. 1e6 (the CLIP sweep's range), for logreg.
DEFAULT_CS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
DEFAULT_MAX_ITER = 1000
#: k-NN: neighbour counts and vote temperature of the DINOv2 protocol.
DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
DEFAULT_HOLDOUT_FRACTION = 0.1
#: Rows read from the memory maps at once (one shuffled chunk), and contiguous rows per shuffled block.
DEFAULT_CHUNK_ROWS = 16384
DEFAULT_BLOCK_ROWS = 512
#: Classes (and probabilities) listed per row by --predict.
DEFAULT_TOP_K = 5
#: Attentive probe (AIM's attention-pooling head): learning rates and weight decays of its AdamW grid,
#: passes, rows per step, attention heads and learned queries. Our defaults, not a reference protocol's.
DEFAULT_ATTENTIVE_LRS = (0.0001, 0.0003, 0.001, 0.003)
DEFAULT_ATTENTIVE_WEIGHT_DECAYS = (0.0, 0.05)
DEFAULT_ATTENTIVE_EPOCHS = 10
DEFAULT_ATTENTIVE_BATCH_SIZE = 256
DEFAULT_ATTENTION_HEADS = 8
DEFAULT_QUERIES = 1
