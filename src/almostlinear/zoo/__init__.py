"""Small reference networks on scikit-learn's bundled 8x8 digits, trained in seconds and cached."""
