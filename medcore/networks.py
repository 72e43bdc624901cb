"""Names of the networks medtune can build, known without importing torch or MONAI."""

RESNET_NAMES = ("resnet10", "resnet18", "resnet34", "resnet50")
