"""Per-image augmentation (seed 002's basic set) in TensorFlow ops."""

from __future__ import annotations

import math

import tensorflow as tf


def make_basic_augment(cfg: dict):
    hflip, scale, rotate = cfg.get("hflip", True), cfg.get("scale", 0.0), cfg.get("rotate_deg", 0.0)
    brightness, contrast = cfg.get("brightness", 0.0), cfg.get("contrast", 0.0)

    def augment(image, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
        if hflip:
            flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        if scale or rotate:
            size = tf.cast(tf.shape(image)[:2], tf.float32)
            zoom = 1.0 + tf.random.stateless_uniform([], seeds[1], -scale, scale)
            angle = tf.random.stateless_uniform([], seeds[2], -rotate, rotate) * math.pi / 180.0
            cy, cx = size[0] / 2.0, size[1] / 2.0
            cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
            # output (x, y) -> input: rotate and scale about the centre
            transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
            image = tf.raw_ops.ImageProjectiveTransformV3(
                images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
                fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
        if brightness:
            image = image + tf.random.stateless_uniform([], seeds[3], -brightness, brightness) * 255.0
        if contrast:
            factor = 1.0 + tf.random.stateless_uniform([], seeds[4], -contrast, contrast)
            mean = tf.reduce_mean(image)
            image = (image - mean) * factor + mean
        return tf.clip_by_value(image, 0.0, 255.0)

    return augment
