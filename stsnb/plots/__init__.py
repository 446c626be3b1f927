"""Plotting functions for the chapters: every figure titled, axes labelled with units."""
