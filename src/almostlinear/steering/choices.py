"""The names steering options accept, kept free of torch so the command-line parser can list them."""

METHODS = ("mean_diff", "pca", "pca_uncentred", "probe")  # direction extractors (see .directions)
SOLVERS = ("exact", "randomized")  # PCA solvers
READS = ("last", "mean")  # how a text's activations are read when fitting
UNITS = ("residual", "diff", "raw")  # what a strength of 1 means (see .artifact); names of core.lever.UNITS
PAIR_SETS = ("sentiment", "weddings")  # built-in contrast pair sets (see almostlinear.data.sentiment)
