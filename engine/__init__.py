"""vmatch engine: decoding, hashing pipeline, `.tmk` I/O, index, matching, Ray and CLI."""
