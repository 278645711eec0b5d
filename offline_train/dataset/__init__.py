"""Training sets from clean webs: runtime tiles, labels from mask components, YOLO + COCO, a card."""
