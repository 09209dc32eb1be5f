#!/usr/bin/env python3
"""Write the real image files of the image preprocessing tests into this folder.

    python tests/data/make_image_data.py

Needs numpy, Pillow and scikit-learn (whose package ships two CC BY 2.0 photos, see README.md):

- photo_flower.jpg   scikit-learn's flower.jpg, byte for byte (640x427 JPEG, RGB)
- photo_china.png    scikit-learn's china.jpg decoded by Pillow, cropped to the 240x180 box at
                     (left 170, top 90), saved as an RGB PNG (lossless)
- photo_china_rgba.png  the 64x48 box at (left 300, top 200) of the same photo, with an alpha
                     channel that ramps from 0 to 255 across the columns (RGBA PNG)
- digit_7.png        the first 7 of test_images.npy (a real MNIST digit), 28x28 gray PNG
"""

import hashlib
import os
import shutil

import numpy as np
import sklearn.datasets
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    shutil.copyfile(os.path.join(images, "flower.jpg"), os.path.join(HERE, "photo_flower.jpg"))
    china = Image.open(os.path.join(images, "china.jpg")).convert("RGB")
    china.crop((170, 90, 170 + 240, 90 + 180)).save(os.path.join(HERE, "photo_china.png"))
    small = np.asarray(china.crop((300, 200, 300 + 64, 200 + 48)))
    alpha = np.broadcast_to(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 64))
    rgba = np.dstack([small, alpha])
    Image.fromarray(rgba, "RGBA").save(os.path.join(HERE, "photo_china_rgba.png"))
    digits = np.load(os.path.join(HERE, "test_images.npy"))
    labels = np.load(os.path.join(HERE, "test_labels.npy"))
    seven = digits[int(np.flatnonzero(labels == 7)[0])]
    Image.fromarray(seven, "L").save(os.path.join(HERE, "digit_7.png"))
    for name in ("photo_flower.jpg", "photo_china.png", "photo_china_rgba.png", "digit_7.png"):
        path = os.path.join(HERE, name)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with Image.open(path) as im:
            print(f"{name}: {im.format} {im.mode} {im.size[0]}x{im.size[1]}, "
                  f"{os.path.getsize(path)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
