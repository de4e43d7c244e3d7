"""Data that ships with the project (no download): real handwritten digits for classification,
generated scenes for detection and segmentation."""
