"""Model plumbing shared by every lever: loading, structure, sites, hooks, collection, statistics, artifacts."""
