"""Column names shared by every stage. One place, so stages never disagree on spelling.

The catalog (``CATALOG_SCHEMA``) is what dataset readers produce; the preprocess stage keeps every
catalog column and adds the ``PRE_*`` columns; every batch stage adds ``STATUS``/``ERROR``.
"""

from __future__ import annotations

import pyarrow as pa

# --- catalog -------------------------------------------------------------------------------
IMAGE_ID = "image_id"  # unique within a catalog: "<dataset>/<native id>"
PATIENT_ID = "patient_id"  # both eyes of a patient share it; folds are assigned per patient
EYE = "eye"  # "left" | "right" | null when the dataset does not say
DATASET = "dataset"  # eyepacs | aptos | messidor2 | idrid | fgadr | drive | hrf_av | les_av | synthetic
PATH = "path"  # local path or URI (s3://...) of the image file
GRADE = "grade"  # ICDR 0-4, null when unknown
REFERABLE = "referable"  # grade >= 2, null when grade is null
FOLD = "fold"  # 0..k-1, patient-level stratified
SPLIT = "split"  # the dataset's own split when it has one ("train", "test"), else null
VESSEL_MASK_PATH = "vessel_mask_path"  # binary vessel mask
AV_MASK_PATH = "av_mask_path"  # artery/vein class map: 0 bg, 1 artery, 2 vein, 3 crossing/uncertain
FOV_MASK_PATH = "fov_mask_path"  # field-of-view mask

# Lesion kinds, in the channel order used by every lesion model and mask reader.
LESION_KINDS = ("ma", "he", "ex", "se", "irma", "nv")
LESION_NAMES = {
    "ma": "microaneurysms",
    "he": "haemorrhages",
    "ex": "hard exudates",
    "se": "soft exudates",
    "irma": "intraretinal microvascular abnormalities",
    "nv": "neovascularisation",
}


def lesion_mask_column(kind: str) -> str:
    """Catalog column holding the mask path of one lesion kind, e.g. ``lesion_he_path``."""
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; known: {', '.join(LESION_KINDS)}")
    return f"lesion_{kind}_path"


LESION_MASK_COLUMNS = tuple(lesion_mask_column(k) for k in LESION_KINDS)

CATALOG_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(PATIENT_ID, pa.string(), nullable=False),
        pa.field(EYE, pa.string()),
        pa.field(DATASET, pa.string(), nullable=False),
        pa.field(PATH, pa.string(), nullable=False),
        pa.field(GRADE, pa.int8()),
        pa.field(REFERABLE, pa.bool_()),
        pa.field(FOLD, pa.int16()),
        pa.field(SPLIT, pa.string()),
        pa.field(VESSEL_MASK_PATH, pa.string()),
        pa.field(AV_MASK_PATH, pa.string()),
        pa.field(FOV_MASK_PATH, pa.string()),
        *[pa.field(c, pa.string()) for c in LESION_MASK_COLUMNS],
    ]
)
CATALOG_COLUMNS = tuple(CATALOG_SCHEMA.names)

# --- batch-stage bookkeeping ---------------------------------------------------------------
STATUS = "status"  # STATUS_OK | STATUS_QUARANTINED
ERROR = "error"  # null when ok; "<reason>" when quarantined (the reason names the file)
STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"
CONFIG_HASH = "config_hash"  # sha256 prefix of the resolved stage config that produced the row

# --- preprocess stage outputs --------------------------------------------------------------
IMAGE_PNG = "image_png"  # processed RGB image, PNG-encoded, size x size
SIZE = "size"  # side of the processed square image, px
ORIG_WIDTH = "orig_width"  # source image width, px
ORIG_HEIGHT = "orig_height"  # source image height, px
DECODE_SCALE = "decode_scale"  # 1, 2, 4 or 8: libjpeg DCT reduction used when decoding
FOV_CX = "fov_cx"  # FOV circle centre x, source pixels
FOV_CY = "fov_cy"  # FOV circle centre y, source pixels
FOV_RADIUS = "fov_radius"  # FOV circle radius, source pixels
FOV_FRACTION = "fov_fraction"  # fraction of the source frame inside the FOV, 0..1
BRIGHTNESS = "brightness"  # mean luminance inside the FOV, 0..1
CONTRAST = "contrast"  # std of luminance inside the FOV, 0..1
SHARPNESS = "sharpness"  # variance of the Laplacian of Gaussian of luminance in the FOV (0..1 scale), at SIZE
GRADABLE = "gradable"  # quality measures within the configured limits
CANNY_PNG = "canny_png"  # optional: Canny edge map (uint8 0/255), PNG
TOPHAT_PNG = "tophat_png"  # optional: vessel top-hat response (uint8), PNG

PREPROCESS_SCHEMA = pa.schema(
    [
        *CATALOG_SCHEMA,
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(CONFIG_HASH, pa.string()),
        pa.field(IMAGE_PNG, pa.binary()),
        pa.field(SIZE, pa.int32()),
        pa.field(ORIG_WIDTH, pa.int32()),
        pa.field(ORIG_HEIGHT, pa.int32()),
        pa.field(DECODE_SCALE, pa.int8()),
        pa.field(FOV_CX, pa.float32()),
        pa.field(FOV_CY, pa.float32()),
        pa.field(FOV_RADIUS, pa.float32()),
        pa.field(FOV_FRACTION, pa.float32()),
        pa.field(BRIGHTNESS, pa.float32()),
        pa.field(CONTRAST, pa.float32()),
        pa.field(SHARPNESS, pa.float32()),
        pa.field(GRADABLE, pa.bool_()),
        pa.field(CANNY_PNG, pa.binary()),
        pa.field(TOPHAT_PNG, pa.binary()),
    ]
)

# --- vessels stage outputs -----------------------------------------------------------------
MODEL_HASH = "model_hash"  # content hash of the model directory that produced the row
VESSEL_PROB_PNG = "vessel_prob_png"  # vessel probability quantised to uint8 (p * 255), PNG, size x size
VESSEL_THRESHOLD = "vessel_threshold"  # probability threshold of the mask the graph was built from
DISC_FOUND = "disc_found"  # optic disc detected
DISC_CX = "disc_cx"  # optic disc centre x, px at SIZE (null when not found)
DISC_CY = "disc_cy"  # optic disc centre y, px at SIZE
DISC_DIAMETER = "disc_diameter_px"  # optic disc diameter, px at SIZE
N_NODES = "n_nodes"  # vessel graph nodes (junctions and endpoints)
N_EDGES = "n_edges"  # vessel graph edges (segments), each once
# torch_geometric-ready arrays, flattened row-major: reshape with n_nodes / n_edges
GRAPH_X = "graph_x"  # (n_nodes, len(NODE_FEATURES)) float32, dr_ray.vessels.NODE_FEATURES
GRAPH_POS = "graph_pos"  # (n_nodes, 2) float32, (x, y) px at SIZE
GRAPH_EDGE_INDEX = "graph_edge_index"  # (2, 2 * n_edges) int64, both directions
GRAPH_EDGE_ATTR = "graph_edge_attr"  # (2 * n_edges, len(EDGE_FEATURES)) float32, dr_ray.vessels.EDGE_FEATURES
BIOMARKER_REASONS = "biomarker_reasons"  # JSON object {biomarker: why it is null, or the caveat of a flagged
#                                          value (e.g. CRAE over only k of 6 arterioles)}; "{}" when all were measured

# Per-image vascular biomarkers (float64, null when not measurable; the reason is in BIOMARKER_REASONS).
BIOMARKERS = (
    "vessel_density",  # vessel pixels / FOV pixels
    "fractal_dimension",  # box counting, eq. (22)
    "branch_points",  # junction nodes
    "mean_tortuosity",  # length-weighted arc / chord
    # over the vessels, eqs. (17)-(20): homogeneity sum G / (1 + |i - j|) (eq. 20; vessels.glcm_homogeneity=skimage:
    # 1 / (1 + (i - j)^2)); entropy -sum G log2 G in bits
    "glcm_contrast", "glcm_correlation", "glcm_energy", "glcm_homogeneity", "glcm_entropy",
    # CRAE / CRVE over the vessels.crx_vessels (6) widest arterioles / venules in the zone, um; AVR = CRAE / CRVE
    "crae_parr_hubbard_um", "crve_parr_hubbard_um", "avr_parr_hubbard",  # eq. (23)-(25), Parr-Hubbard
    "crae_knudtson_um", "crve_knudtson_um", "avr_knudtson",  # Knudtson 2003 revised formulas
)
# Arterioles / venules combined into CRAE / CRVE (int32): min(found in the zone, vessels.crx_vessels); below
# crx_vessels the CRAE / CRVE / AVR values are flagged in BIOMARKER_REASONS; null when the zone was not measured
# (disc not found, zone off the frame, no A/V classifier). = dr_ray.vessels.ZONE_COUNT_KEYS
CRAE_N_VESSELS = "crae_n_vessels"
CRVE_N_VESSELS = "crve_n_vessels"
ZONE_VESSEL_COUNTS = (CRAE_N_VESSELS, CRVE_N_VESSELS)

VESSELS_SCHEMA = pa.schema(
    [
        *CATALOG_SCHEMA,
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(CONFIG_HASH, pa.string()),
        pa.field(MODEL_HASH, pa.string()),
        pa.field(SIZE, pa.int32()),
        pa.field(VESSEL_PROB_PNG, pa.binary()),
        pa.field(VESSEL_THRESHOLD, pa.float32()),
        pa.field(DISC_FOUND, pa.bool_()),
        pa.field(DISC_CX, pa.float32()),
        pa.field(DISC_CY, pa.float32()),
        pa.field(DISC_DIAMETER, pa.float32()),
        pa.field(N_NODES, pa.int32()),
        pa.field(N_EDGES, pa.int32()),
        pa.field(GRAPH_X, pa.list_(pa.float32())),
        pa.field(GRAPH_POS, pa.list_(pa.float32())),
        pa.field(GRAPH_EDGE_INDEX, pa.list_(pa.int64())),
        pa.field(GRAPH_EDGE_ATTR, pa.list_(pa.float32())),
        *[pa.field(b, pa.float64()) for b in BIOMARKERS],
        *[pa.field(c, pa.int32()) for c in ZONE_VESSEL_COUNTS],
        pa.field(BIOMARKER_REASONS, pa.string()),
    ]
)

# --- pseudo-labels stage outputs -----------------------------------------------------------
LESION_MAPS_PNG = "lesion_maps_png"  # uint8 lesion probabilities (p * 255), the K maps stacked vertically:
#                                      a (K * map_size, map_size) grey PNG, kinds in LESION_MAP_KINDS order
LESION_MAP_KINDS = "lesion_map_kinds"  # comma-separated lesion kinds of the stacked maps, e.g. "ma,he,ex,se"
LESION_MAP_SIZE = "lesion_map_size"  # side of each stored map, px


def lesion_area_column(kind: str) -> str:
    """Fraction of FOV pixels above the threshold for one lesion kind (null when the model lacks the kind)."""
    lesion_mask_column(kind)  # validates the kind
    return f"lesion_{kind}_area"


def lesion_count_column(kind: str) -> str:
    """Connected components (8-connected) above the threshold for one lesion kind."""
    lesion_mask_column(kind)
    return f"lesion_{kind}_count"


PSEUDO_LABELS_SCHEMA = pa.schema(
    [
        *CATALOG_SCHEMA,
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(CONFIG_HASH, pa.string()),
        pa.field(MODEL_HASH, pa.string()),
        pa.field(SIZE, pa.int32()),
        pa.field(LESION_MAPS_PNG, pa.binary()),
        pa.field(LESION_MAP_KINDS, pa.string()),
        pa.field(LESION_MAP_SIZE, pa.int32()),
        *[pa.field(lesion_area_column(k), pa.float32()) for k in LESION_KINDS],
        *[pa.field(lesion_count_column(k), pa.int32()) for k in LESION_KINDS],
    ]
)

# --- predict stage outputs (dr_ray.pipelines.predict): a train run's fold models as an ensemble ---------
PROBS = "probs"  # (C,) float32: mean over the fold models of their softmax probabilities (eval mode)
MC_PROBS = "mc_probs"  # (C,) float32: mean over fold models and MC-dropout passes (the predictive distribution)
P_REFERABLE = "p_referable"  # P(grade >= 2) of PROBS (5-class models: the sum of classes 2..4)
PREDICTED_GRADE = "predicted_grade"  # argmax of PROBS for a 5-class (grade) model; null for a referable model
PREDICTED_REFERABLE = "predicted_referable"  # P_REFERABLE >= predict.threshold
ENTROPY = "entropy"  # predictive entropy of MC_PROBS, nats
FOLD_SPREAD = "fold_spread"  # standard deviation of P_REFERABLE over the fold models (disagreement)
FOLD_P_REFERABLE = "fold_p_referable"  # (K,) float32: P_REFERABLE of each fold model, in MODEL_FOLDS order
MODEL_FOLDS = "model_folds"  # (K,) int8: the train run's folds whose models voted
MODEL_HASHES = "model_hashes"  # (K,) content hashes of those fold model directories

PREDICTIONS_SCHEMA = pa.schema(
    [
        *CATALOG_SCHEMA,
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(CONFIG_HASH, pa.string()),
        pa.field(PROBS, pa.list_(pa.float32())),
        pa.field(MC_PROBS, pa.list_(pa.float32())),
        pa.field(P_REFERABLE, pa.float32()),
        pa.field(PREDICTED_GRADE, pa.int8()),
        pa.field(PREDICTED_REFERABLE, pa.bool_()),
        pa.field(ENTROPY, pa.float32()),
        pa.field(FOLD_SPREAD, pa.float32()),
        pa.field(FOLD_P_REFERABLE, pa.list_(pa.float32())),
        pa.field(MODEL_FOLDS, pa.list_(pa.int8())),
        pa.field(MODEL_HASHES, pa.list_(pa.string())),
    ]
)

# --- fusion_data index (dr_ray.pipelines.fusion_data) ----------------------------------------
SOURCE_FILE = "source_file"  # the stage shard (full path / URI) a row was read from


def source_file_column(stage: str) -> str:
    """Index column naming the ``stage`` shard that holds a joined row's data, e.g. ``vessels_file``."""
    if stage not in ("preprocess", "pseudo_labels", "vessels"):
        raise ValueError(f"unknown stage {stage!r}; known: preprocess, pseudo_labels, vessels")
    return f"{stage}_file"
