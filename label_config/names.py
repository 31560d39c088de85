"""Names shared by the config XML, the rasteriser and the ML backend: one owner for each."""

# Object tags and the task-data keys they read.
IMAGE = "image"  # the task image, data key $image
SALIENCY = "saliency"  # the saliency overlay, data key $saliency
IMAGE_KEY = "image"
SALIENCY_KEY = "saliency"
ANNOTATED = IMAGE  # the object every region is drawn on (to_name)

# Data keys shown as text above the images.
SAMPLE_ID_KEY = "sample_id"
ROUND_KEY = "round"
LABEL_KEY = "label"
PREDICTION_KEY = "prediction"
PROBABILITY_KEY = "probability"
MODEL_VERSION_KEY = "model_version"  # the model that made a task's overlay and suggestions

# Controls (from_name) and the label each shows; the labels differ so the two tools look different.
CELL_POINT = "irrelevant_cell"  # KeyPointLabels: a click marks the cell under it
CELL_POINT_LABEL = "Irrelevant cell"
CELL_RECT = "irrelevant_area"  # RectangleLabels: a rectangle marks every cell it overlaps
CELL_RECT_LABEL = "Irrelevant area"
# The neutral label of a region tool: what /predict pre-fills the most salient cells with. It says where the model
# looks, not what it must not use, so a suggestion accepted unread is no feedback (``label_config.suggest``).
MODEL_LOOKS_HERE = "Model looks here"
LABEL_CHECK = "label_check"  # Choices: is the dataset label right?
LABEL_OK = "label is correct"
LABEL_WRONG = "label is wrong"
CORRECT_LABEL = "correct_label"  # Choices over the classes, shown when the label is wrong
SKIP = "skip"  # Choices with one choice: the image is ambiguous, give no feedback
SKIP_CHOICE = "ambiguous, skip"
