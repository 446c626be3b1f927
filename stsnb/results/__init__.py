"""Chapter 05 and the controls (08): statistics of the runs' predictions (stats), DeLong and
calibration, the permutation tests of the whole cross-validation (significance, permutation) and
the positive and negative controls (controls)."""
