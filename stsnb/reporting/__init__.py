"""Chapter 09: the reporting page (TRIPOD+AI, CLAIM items answered from the work dir) and the
failure catalogue."""
