"""Chapter 07, the appendix: the public TCIA sample imported from DICOM, its checks, figures
and conclusions (``real_cohort`` computes, ``figures`` draws, ``report`` words the findings)."""
