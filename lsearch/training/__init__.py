"""Training one seed of one configuration: data, augmentation, models, metrics, devices and the
seed run."""
