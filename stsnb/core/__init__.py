"""The core every stage shares: profiles (config), errors, atomic writes and records (store),
the images (modalities, combinations, imageio), the run manifest, the metrics and the runs'
layout. It imports no other part of the package."""
