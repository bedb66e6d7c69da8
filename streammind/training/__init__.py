"""Training: typed settings (`arguments`), the two-stage entry (`train`), the dataset, the collator,
the frame-feature cache and its extraction pass (`features`), and the annotation formats."""
