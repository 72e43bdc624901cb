"""Network families, one file each; 2D/3D through ``spatial_dims`` like MONAI's nets."""
