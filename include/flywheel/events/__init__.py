"""The event contract shared by every stage: topic schemas from the spec (``schema``), the one total
decoder (``decode``), rejection reasons (``rejections``), the dead-letter record (``dead_letter``) and
the label join (``labels``). The drain, the scorer, training and monitoring import it; it imports no
stage."""
