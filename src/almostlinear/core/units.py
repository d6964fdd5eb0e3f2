"""The fixed vocabulary of strength units (no torch here, so any layer may read it)."""

# The units a strength can be in. An artifact stores its default unit in ``provenance.units``.
UNITS: dict[str, str] = {
    "residual": "1 = the median residual-stream norm at the site, measured on the fitting texts",
    "diff": "1 = the norm of the fitted mean difference (CAA's multiplier)",
    "typical": "1 = the feature's typical activation (its mean where it is active)",
    "fraction": "1 = the whole operation, 0 = none; values between interpolate linearly",
    "raw": "1 = the stored change exactly as fitted; the strength multiplies it",
    "none": "the lever has no strength; only 1 is accepted",
}
