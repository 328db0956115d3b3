"""Tiny configs of every registered model, shared by the zoo harness and the JAX backend check (this module
imports neither TensorFlow nor Keras, so a JAX-backend process can read it)."""

SIZE = 32
SIZES = {"segformer": 64}  # keras-hub's Mix Transformer fails to build below 64 px

# name -> the smallest config that exercises it (weights off: nothing is downloaded)
TINY = {
    "classification": {
        "custom_cnn": {"filters": [4, 4, 8, 8], "dense_units": 8},
        "efficientnet_b2": {"weights": None},
        "efficientnet_b3": {"weights": None},
        "resnet34_d": {"weights": None},
        "resnet34": {"weights": None},
        "genomic_fusion": {
            "encoder": "conv",
            "encoder_options": {"depth": 2, "filters": 4},
            "genomic_features": 3,
            "image_units": 4,
            "genomic_units": 4,
            "fusion_units": 4,
        },
        "nodule_hyperfusion": {"filters": [4, 4], "embedding_units": 4, "ring_px": 2, "proximity_px": 4},
        "resnet50": {"weights": None},
        "resnet101": {"weights": None},
        "res2net50": {"weights": None},
    },
    "segmentation": {
        "unet": {"depth": 2, "filters": 4, "batch_norm": True},
        "attention_res_unet": {"depth": 2, "filters": 4},
        "inf_net": {
            "encoder": "conv",
            "depth": 5,
            "filters": 2,
            "rfb_channels": 4,
            "edge_channels": 4,
            "ra_channels": [6, 4, 4],
        },
        "unet_plus_plus": {"depth": 2, "filters": 4, "deep_supervision": True},
        "unar": {},  # the ResNet34-D encoder is fixed
        "res34_unet_v2": {},
        "light_unet": {"depth": 2, "filters": 4},
        "deeplab_v3_plus": {},
        "segformer": {},
    },
    "encoder": {
        "conv": {"depth": 2, "filters": 4},
        "efficientnet_b2": {"weights": None},
        "efficientnet_b3": {"weights": None},
        "resnet34_d": {"weights": None},
        "resnet34": {"weights": None},
        "resnet50": {"weights": None},
        "resnet101": {"weights": None},
        "res2net50": {"weights": None, "layers": [1, 1, 1, 1]},  # the full [3, 4, 6, 3]: test_backbones
    },
}
