"""Chapter 01: the cohort's folder read, checked and curated into ``work_dir/cohort.csv``
(clinical tables, cohort.toml, the inclusion flow); ``stage`` runs it on disk."""
