"""vidseq preprocessing: raw videos to TFRecords of fixed-length clips (Apache Beam)."""
