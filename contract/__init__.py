"""The contract between training and the service, importable by both (numpy and Pillow only, no torch,
no ONNX Runtime): model.json as a typed spec and the model file's hash (`spec`), the RGB conversion
every image goes through (`images`), and the views and tiles a model sees (`views`).

Training writes a model folder through it and the service reads one through it, so neither side
imports the other (models/README.md describes the folder).
"""
