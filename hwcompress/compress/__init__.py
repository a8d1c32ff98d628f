"""Model compression: sparse regularisation, pruning, shrinking, clustering and the .hwc artifact."""
