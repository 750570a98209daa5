"""DR classifiers: timm baselines and three multimodal fusion models, all behind ``create_model``.

Every classifier is an ``nn.Module`` whose ``forward(batch: dict) -> logits (B, num_classes) float32`` reads
    "image":  (B, 3, S, S) float32, normalised ``(x / 255 - spec.mean) / spec.std``, S = ``spec.input_size``;
    "lesion": (B, K, M, M) float32 lesion probability maps in [0, 1] (K = ``lesion_kinds``, M = ``lesion_size``);
    "graph":  a torch_geometric ``Batch`` of B vascular graphs (``x`` (N, node_features), ``edge_index`` (2, E),
              ``batch`` (N,)); graphs may have no node;
    "stats":  (B, stats_dim) float32 global vascular biomarkers (standardised, with missing-value indicators);
only the keys of the modalities it uses (``.modalities``, in ``MODALITIES`` order); a missing one raises
ValueError naming the key; other keys ("label", ...) are ignored. Softmax over the logits is the caller's
(``spec.output == "softmax"``). Other attributes: ``.spec`` (:class:`ModelSpec`; ``kwargs`` rebuild the
architecture), ``.image_encoder`` (the timm net applied to the image; ``lesion_encoder`` where there is one),
``.gradcam_layer`` (module whose output is the image branch's last spatial feature map) and
``.gradcam_layout`` ("NCHW", "NHWC" or "NLC", see :mod:`dr_ray.models.gradcam`).

Registered builders (common kwargs: ``num_classes=2`` (2 = referable DR, 5 = ICDR grade), ``pretrained=False``,
``input_size=512`` px, ``dropout=0.1``, ``backbone=""`` (model default), ``modalities=None`` (all supported)):

    "resnet50", "efficientnet_b0", "vit_b" (vit_base_patch16_224, input_size % 16 == 0), "swin_t"
        (swin_tiny_patch4_window7_224; ``window_size=7``; input_size 448 default: every Swin stage grid must be
        <= window or a multiple of it, i.e. multiples of 224 for window 7), "timm_classifier" (any timm name as
        the required ``backbone``): :class:`TimmClassifier`, image only.
    "cross_feature_fusion"  :class:`CrossFeatureFusion`, cross-feature-fusion poster (Mok et al.): image tokens
        attend to tokens of the generated lesion maps; both branches any timm backbone (``backbone``,
        ``lesion_backbone``, extra timm kwargs in ``backbone_kwargs`` / ``lesion_backbone_kwargs``), Swin at its
        branch's own input size (window 8 for 512 px), the lesion branch loadable from a Swin U-Net encoder.
    "dcat"  :class:`DualCrossAttention`, DCAT: EfficientNet-B4 and ResNet34 feature maps attend to each other,
        CBAM refinement; :func:`mc_dropout_predict` gives its (and every other classifier's) predictive entropy.
    "graph_fusion"  :class:`GraphFusion`, graph-enhanced vascular fusion paper sec. 3.4-3.10: MobileNetV3 +
        dilated conv + CBAM image embedding (``blocks``: any subset of se / dilated / cbam, Table 6),
        GCN vascular-graph embedding, biomarker vector, transformer fusion
        over [cls; img; graph; stats] tokens (eqs. 26-33).

Fusion kwargs: ``hidden_dim=256`` (token width d), ``heads=4``, ``fusion_layers=2``.

Dropout is always an ``nn.Dropout`` module in front of the linear head (not timm's ``drop_rate``: timm's
ResNet/EfficientNet apply it functionally, following the whole model's train flag, which Monte-Carlo dropout
cannot switch on while BatchNorm stays in eval mode).

Files (timm's layout, one per model family; every builder registers itself on ``import dr_ray.models.classifiers``):

    ``_common.py``               argument / batch checks, ``MODALITIES`` and the ``DEFAULT_*`` sizes, the model
                                 spec, :func:`create_timm_model`, :func:`branch_timm_kwargs` and the
                                 ``features_only`` branch encoder every fusion model builds on;
    ``timm_classifier.py``       :class:`TimmClassifier` and "timm_classifier", "resnet50", "efficientnet_b0",
                                 "swin_t", "vit_b";
    ``cross_feature_fusion.py``  :class:`CrossFeatureFusion`, "cross_feature_fusion" (and the encoder-transfer
                                 helpers of its ``load_segmentation_encoder``);
    ``dcat.py``                  :class:`DualCrossAttention`, "dcat";
    ``graph_fusion.py``          ``GRAPH_FUSION_BLOCKS``, :func:`check_graph_fusion_blocks`, :class:`GraphFusion`,
                                 "graph_fusion";
    ``uncertainty.py``           :func:`mc_dropout_predict`.
"""

from dr_ray.models.classifiers._common import (
    DEFAULT_LESION_SIZE,
    DEFAULT_SWIN_T_INPUT_SIZE,
    MODALITIES,
    branch_timm_kwargs,
    create_timm_model,
)
from dr_ray.models.classifiers.timm_classifier import (
    TimmClassifier,
    efficientnet_b0,
    resnet50,
    swin_t,
    timm_classifier,
    vit_b,
)
from dr_ray.models.classifiers.cross_feature_fusion import CrossFeatureFusion, cross_feature_fusion
from dr_ray.models.classifiers.dcat import DualCrossAttention, dcat
from dr_ray.models.classifiers.graph_fusion import (
    GRAPH_FUSION_BLOCKS,
    GraphFusion,
    check_graph_fusion_blocks,
    graph_fusion,
)
from dr_ray.models.classifiers.uncertainty import mc_dropout_predict

__all__ = [
    "DEFAULT_LESION_SIZE",
    "DEFAULT_SWIN_T_INPUT_SIZE",
    "GRAPH_FUSION_BLOCKS",
    "MODALITIES",
    "CrossFeatureFusion",
    "DualCrossAttention",
    "GraphFusion",
    "TimmClassifier",
    "branch_timm_kwargs",
    "check_graph_fusion_blocks",
    "create_timm_model",
    "cross_feature_fusion",
    "dcat",
    "efficientnet_b0",
    "graph_fusion",
    "mc_dropout_predict",
    "resnet50",
    "swin_t",
    "timm_classifier",
    "vit_b",
]
