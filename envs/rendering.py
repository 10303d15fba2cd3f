"""Drawing the environments with pygame: world coordinates (metres, y up) to pixels.

A ``Renderer`` owns the output (an off-screen surface for ``"rgb_array"``, a window for
``"human"``); each frame is drawn on a fresh ``Canvas`` by an environment's draw function.
pygame is imported on the first frame, so environments without rendering never need it; it
is the ``render`` extra (``pip install "mpc-policy[render]"``), and a frame asked for without
it raises ``MissingExtraError`` (an ``ImportError``) saying so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .extras import import_optional

__all__ = ["RENDER_MODES", "Canvas", "Renderer"]

RENDER_MODES = ("human", "rgb_array")
Color = tuple[int, int, int]
Point = Sequence[float]


def _import_pygame() -> Any:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import_optional("pygame.gfxdraw", "render", "rendering")
    return import_optional("pygame", "render", "rendering")


class Canvas:
    """A pygame surface addressed in world coordinates.

    Args:
        surface: the pygame surface to draw on.
        origin: pixel position of the world origin.
        scale: pixels per metre.
    """

    def __init__(self, surface: Any, origin: tuple[float, float], scale: float) -> None:
        self._pygame = _import_pygame()
        self.surface = surface
        self.origin = origin
        self.scale = scale

    def pixel(self, point: Point) -> tuple[int, int]:
        """Pixel coordinates of a world point (y pointing up in the world, down on screen)."""
        return (
            round(self.origin[0] + self.scale * point[0]),
            round(self.origin[1] - self.scale * point[1]),
        )

    def fill(self, color: Color) -> None:
        self.surface.fill(color)

    def polygon(self, points: Sequence[Point], color: Color) -> None:
        pixels = [self.pixel(p) for p in points]
        self._pygame.gfxdraw.aapolygon(self.surface, pixels, color)
        self._pygame.gfxdraw.filled_polygon(self.surface, pixels, color)

    def circle(self, center: Point, radius: float, color: Color) -> None:
        x, y = self.pixel(center)
        r = max(1, round(radius * self.scale))
        self._pygame.gfxdraw.aacircle(self.surface, x, y, r, color)
        self._pygame.gfxdraw.filled_circle(self.surface, x, y, r, color)

    def rod(self, start: Point, end: Point, width: float, color: Color) -> None:
        """A bar of the given width (m) from start to end with rounded ends."""
        dx, dy = end[0] - start[0], end[1] - start[1]
        norm = math.hypot(dx, dy) or 1.0
        ox, oy = -dy / norm * width / 2, dx / norm * width / 2
        corners = [
            (start[0] + ox, start[1] + oy),
            (end[0] + ox, end[1] + oy),
            (end[0] - ox, end[1] - oy),
            (start[0] - ox, start[1] - oy),
        ]
        self.polygon(corners, color)
        self.circle(start, width / 2, color)
        self.circle(end, width / 2, color)

    def rectangle(self, center: Point, width: float, height: float, color: Color) -> None:
        x, y, w, h = center[0], center[1], width / 2, height / 2
        self.polygon([(x - w, y - h), (x - w, y + h), (x + w, y + h), (x + w, y - h)], color)

    def arrow(self, start: Point, end: Point, width: float, color: Color) -> None:
        """A straight arrow from start to end; its head is a third of its length."""
        dx, dy = end[0] - start[0], end[1] - start[1]
        length = math.hypot(dx, dy)
        if length == 0.0:
            return
        ux, uy = dx / length, dy / length
        head = length / 3
        neck = (end[0] - ux * head, end[1] - uy * head)
        self.rod(start, neck, width, color)
        self.polygon(
            [
                (neck[0] - uy * head / 2, neck[1] + ux * head / 2),
                (end[0], end[1]),
                (neck[0] + uy * head / 2, neck[1] - ux * head / 2),
            ],
            color,
        )


class Renderer:
    """Turns draw functions into frames, shown in a window or returned as RGB arrays.

    Args:
        render_mode: "rgb_array" (return (height, width, 3) uint8 frames) or "human" (show
            a window paced at ``fps``; headless machines can set SDL_VIDEODRIVER=dummy).
        size: (width, height) in pixels.
        fps: frames per second of the "human" window.
    """

    def __init__(self, render_mode: str, size: tuple[int, int], fps: float) -> None:
        if render_mode not in RENDER_MODES:
            raise ValueError(
                f"render_mode: expected one of {RENDER_MODES}, received {render_mode!r}"
            )
        self.render_mode = render_mode
        self.size = size
        self.fps = fps
        self._window: Any = None
        self._clock: Any = None

    def frame(
        self, draw: Callable[[Canvas], None], origin: tuple[float, float], scale: float
    ) -> np.ndarray | None:
        """Draw one frame; return it as a fresh (height, width, 3) uint8 array in
        "rgb_array" mode, show it and return None in "human" mode."""
        pygame = _import_pygame()
        canvas = Canvas(pygame.Surface(self.size), origin, scale)
        draw(canvas)
        if self.render_mode == "rgb_array":
            return np.transpose(pygame.surfarray.array3d(canvas.surface), axes=(1, 0, 2))
        if self._window is None:
            pygame.display.init()
            self._window = pygame.display.set_mode(self.size)
            self._clock = pygame.time.Clock()
        self._window.blit(canvas.surface, (0, 0))
        pygame.event.pump()
        self._clock.tick(self.fps)
        pygame.display.flip()
        return None

    def close(self) -> None:
        """Close the window, if one is open; safe to call more than once."""
        if self._window is not None:
            pygame = _import_pygame()
            pygame.display.quit()
            self._window = None
            self._clock = None
