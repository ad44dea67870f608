"""The Market-1501 folder layout, shared by the parser and the synthetic generator."""

# Split -> folder name, in the order train, query, gallery.
MARKET_SPLIT_DIRS = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
