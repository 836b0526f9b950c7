"""Spec messages several TAO networks share (TAO's nvidia_tao_tf1/cv/common/proto)."""
