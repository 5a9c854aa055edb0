"""The seed's example (SEED.md), verbatim but for where MNIST comes from.

`mnist.load_data()` downloads from the internet, which this machine cannot reach, so the arrays come
from adamkit's loader, which returns exactly what `load_data()` returns (verified by sha256).
Run: python benchmarks/seed_script.py
"""

import tensorflow as tf

from adamkit.data import load_mnist

# Load and preprocess MNIST dataset
(x_train, y_train), (x_test, y_test) = load_mnist()
x_train, x_test = x_train / 255.0, x_test / 255.0

# Define neural network model
model = tf.keras.models.Sequential([
    tf.keras.layers.Flatten(input_shape=(28, 28)),
    tf.keras.layers.Dense(128, activation='relu'),
    tf.keras.layers.Dropout(0.2),
    tf.keras.layers.Dense(10)
])

# Compile model with Adam optimizer
model.compile(optimizer='adam',
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=['accuracy'])

# Train the model
history = model.fit(x_train, y_train, epochs=3,
                    validation_data=(x_test, y_test), verbose=2)

print(f"Final validation accuracy: {history.history['val_accuracy'][-1]:.4f}")
