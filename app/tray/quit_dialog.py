"""Asks whether quitting the tray should stop the VM too, with a "don't ask again" box."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtWidgets import QCheckBox, QMessageBox, QWidget


@dataclass(frozen=True)
class QuitAnswer:
    action: str | None  # "stop" | "keep" | None (cancelled)
    remember: bool


class QuitDialog(QMessageBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Quit Pinnace")
        self.setIcon(QMessageBox.Icon.Question)
        self.setText("Stop the VM too?")
        self.setInformativeText(
            "If you keep it running, docker commands keep working and the tray can be opened again later."
        )
        self.stop_button = self.addButton("Stop VM and Quit", QMessageBox.ButtonRole.AcceptRole)
        self.keep_button = self.addButton("Quit, Keep VM Running", QMessageBox.ButtonRole.DestructiveRole)
        self.addButton(QMessageBox.StandardButton.Cancel)
        self.setDefaultButton(self.keep_button)
        self.remember_box = QCheckBox("Don't ask again")
        self.setCheckBox(self.remember_box)

    def answer(self) -> QuitAnswer:
        clicked = self.clickedButton()
        action = "stop" if clicked is self.stop_button else "keep" if clicked is self.keep_button else None
        return QuitAnswer(action, self.remember_box.isChecked() and action is not None)
