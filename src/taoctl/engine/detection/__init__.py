"""What every one-stage detector shares (yolo_v3 now; yolo_v4, yolo_v4_tiny next).

* ``anchors``: anchor strings as TAO's specs write them, and k-means on box shapes (1 - IoU);
* ``yolo``: YOLO target assignment, TAO's YOLOv3 loss, decoding to boxes and scores;
* ``nms``: per-class NMS in NumPy, and as an export tail writing TAO's BatchedNMS outputs (ONNX
  NonMaxSuppression; EfficientNMS_TRT in a TensorRT engine);
* ``frames``: a spec's ``data_sources`` / validation split to KITTI frames (TFRecords or raw KITTI);
* ``images``: images resized to the network input with their boxes, augmentation for YOLO;
* ``evaluation``: the AP evaluator (training's validation and ``evaluate``) on decoded detections;
* ``writers``: inference's annotated images and KITTI labels with confidences;
* ``task``: the training settings every TAO TF1 detection spec names alike (detectnet_v2 uses it too).
"""
