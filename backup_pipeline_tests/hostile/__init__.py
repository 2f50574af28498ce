"""A hostile corpus of our own and a comparator, to prove backup → restore round trips byte for
byte on data the project did not shape for itself (issue 15).

``database`` builds the database corpus, ``buckets`` the bucket corpus (through minio and the
signed raw requests of ``s3raw``), ``compare`` snapshots both sides and reports each difference.
Used by ``test_hostile_comparator.py`` (the comparator's self-test) and
``test_hostile_round_trip.py`` (the product's jobs and disaster-recovery CLI).
"""
