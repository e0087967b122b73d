"""The U-Net, its configuration, and the SavedModel export/load used for serving."""
