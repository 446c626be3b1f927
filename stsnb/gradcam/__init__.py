"""Chapter 06: Grad-CAM maps of the fold models on test slices and their share inside the
tumour (maps)."""
