"""Data layer: sources -> manifest -> labels/splits/balancing -> preprocessing -> tf.data pipelines."""
